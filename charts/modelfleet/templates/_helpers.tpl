{{/* Names, labels and the RBAC rule sets shared by the templates. */}}

{{- define "modelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "modelfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: modelfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: repository@digest when a digest is given (the tag is then ignored), else repository:tag. */}}
{{- define "modelfleet.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "modelfleet.image" -}}
{{- include "modelfleet.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "modelfleet.runtimeImage" -}}
{{- include "modelfleet.imageRef" (dict "image" .Values.runtimeImage "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "modelfleet.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/*
Rules for the objects the operator reads and writes in the namespaces it
watches: a ClusterRole holds them when it watches all namespaces, a Role per
namespace otherwise. Every verb is one the operator issues; keep this list in
step with tests/chart/rbac.py and the request log of the integration tests.
*/}}
{{- define "modelfleet.namespacedRules" -}}
# The custom resource: kopf lists and watches it into the operator's cache; the
# operator patches the finalizer of a version that hands over its traffic, the
# weights of a promotion, and the status; retraining creates the next version.
- apiGroups: [serving.modelfleet.dev]
  resources: [modelversions]
  verbs: [list, watch, create, patch]
- apiGroups: [serving.modelfleet.dev]
  resources: [modelversions/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (e.g. OpenShift).
- apiGroups: [serving.modelfleet.dev]
  resources: [modelversions/finalizers]
  verbs: [update]
# What the operator makes: watched (label selector managed-by=modelfleet-operator)
# into its cache, looked up by name once before it is first made (an object of
# that name someone else made is never taken over), written by server-side apply.
# Garbage collection deletes them with their owner; only an HPA or PDB the spec
# no longer asks for is deleted by the operator.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, patch, delete]
{{- if eq .Values.routing.mode "gateway" }}
# GRPCRoutes only where the cluster serves them (the operator asks discovery at start).
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes, grpcroutes]
  verbs: [get, list, watch, patch]
{{- end }}
# Retraining Jobs (watched, created when the samples are there) and the pods of
# runtimes and trainers: their readiness, addresses and termination messages.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# The ready endpoints of a version about to take traffic (its Service's slices).
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list]
{{- if .Values.networkPolicy.models }}
# The NetworkPolicy of each model (network-policy), made like its other shared objects.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, patch]
{{- end }}
# The feedback token Secret the operator creates when none is named; never read.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
{{- if .Values.secretReferences.consumableLabel }}
# Which Secrets carry the consumable label: listed and watched with that label as a
# server-side selector, names and labels kept. RBAC cannot limit list/watch to a label
# or to metadata (docs/security.md); there is still no get.
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
{{- end }}
# kopf's and the operator's own Events.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* kopf's peering records, only when several replicas run. */}}
{{- define "modelfleet.clusterPeeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}

{{- define "modelfleet.namespacedPeeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
