"""The emulated-cluster harness of the integration tests (see docs/testing.md).

- `emulator.ClusterEmulator`: the API server (kmock + API-server semantics, GC, request log, error injection);
- `cluster.Cluster`: one emulated cluster for a test (client, kubeconfig, namespace, volumes);
- `kubelet.DeploymentController` / `EndpointSliceController`: the missing controllers, running real processes;
- `operator.InProcessOperator`: the real kopf operator in a thread of its own;
- `jobs.JobController`: the Job controller, running the trainer;
- `router.Router`: the Gateway / Service data path in front of the pods;
- `client.ClusterClient`: the harness's own API client.

Waiting on a condition: `tests.support.polling.wait_for`.
"""
