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

{{- define "modelfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "modelfleet.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) }}
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
# The custom resource: kopf lists/watches it and patches finalizers and
# progress annotations; the retraining loop creates the next version.
- apiGroups: [serving.modelfleet.dev]
  resources: [modelversions]
  verbs: [get, list, watch, create, patch]
- apiGroups: [serving.modelfleet.dev]
  resources: [modelversions/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (e.g. OpenShift).
- apiGroups: [serving.modelfleet.dev]
  resources: [modelversions/finalizers]
  verbs: [update]
# What a ModelVersion owns: read, created when missing, merge-patched when drifted.
# Garbage collection deletes them with their owner; only an HPA or PDB the spec
# no longer asks for is deleted by the operator.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
# Retraining Jobs: listed per model, created when the samples are there.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, create]
{{- if eq .Values.routing.mode "gateway" }}
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, create, patch]
{{- end }}
# Ready pods' addresses, to ask every replica for readiness, counters and samples.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# The feedback token Secret the operator creates when none is named.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
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
