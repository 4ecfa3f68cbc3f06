"""The emulated-cluster harness of the integration tests (see docs/testing.md).

- `emulator.ClusterEmulator`: the API server (kmock + API-server semantics, GC, request log, error injection),
  with its pure core: `writes` (what a write makes of an object), `apply` (server-side apply and field
  managers), `normalise` + `quantities` (defaults, canonical forms, pruning), `schemas` (structural schemas),
  `selectors` (label and field selectors), `quota` and `podsecurity` (admission of Pods);
- `cluster.Cluster`: one emulated cluster for a test (client, kubeconfig, namespace, volumes);
- `kubelet.DeploymentController` / `EndpointSliceController`: the missing controllers, running real processes;
- `operator.InProcessOperator`: the real kopf operator in a thread of its own;
- `jobs.JobController`: the Job controller, running the trainer;
- `router.Router` / `router.Gateway`: the Gateway / Service data path in front of the pods, deciding by
  `gateway` (Gateway API matching and conflict rules over every attached HTTPRoute);
- `workloads.SimulatedWorkloads`: Deployments, Pods and EndpointSlices without processes (benchmarks);
- `deployments`: a Deployment's status as the Deployment controller writes it;
- `rawapi.RawApi`: raw HTTP calls answering (status, body), for the emulator's own tests;
- `client.ClusterClient`: the harness's own API client.

Waiting on a condition: `tests.support.polling.wait_for`.
"""
