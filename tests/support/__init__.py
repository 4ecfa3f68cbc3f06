"""Code the test suites (and bench/) share; import it as `tests.support.<module>`.

- polling: `wait_for` / `wait_until` (a condition with a deadline), `PollingController`;
- processes: `ChildProcess`, a logged child process stopped with SIGTERM then SIGKILL;
- runtime_process: `RuntimeProcess`, `modelfleet-runtime serve` on a socket the test holds;
- live_server: the app under uvicorn in the test's own event loop;
- redis_server: `RedisServer`, a real Valkey/Redis on 127.0.0.1 (tests and benchmarks);
- onnx_models: small real ONNX models built with onnx.helper;
- paths: where the repository's parts are;
- rbac_replay: the pytest plugin that checks the chart's RBAC against the operator's requests.
"""
