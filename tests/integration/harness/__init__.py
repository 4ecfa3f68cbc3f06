"""The emulated-cluster harness of the integration tests (see docs/testing.md).

- `emulator.ClusterEmulator`: the API server (kmock + API-server semantics, GC, request log, error injection);
- `cluster.Cluster`: one emulated cluster for a test (client, kubeconfig, namespace, volumes);
- `kubelet.DeploymentController` / `EndpointSliceController`: the missing controllers, running real processes;
- `operator.InProcessOperator`: the real kopf operator in the test's event loop;
- `client.wait_for`: poll a condition with a deadline.
"""
