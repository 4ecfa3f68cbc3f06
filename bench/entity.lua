-- wrk script: POST {"entity_id": ID, "features": F} with a rotating entity id, print one JSON summary line.
-- $BENCH_BODY: a file holding F, the request's own features (a JSON array).
-- $BENCH_ENTITIES: ids cycled through, "0" .. "N-1"; $BENCH_ENTITY_START: the first one.
-- Same output as post.lua (bench/loadgen.py --entities does the same without wrk).
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local features = f:read("*a"):gsub("%s+$", "")
f:close()
local count = assert(tonumber(os.getenv("BENCH_ENTITIES")), "BENCH_ENTITIES must be a number")
local next_id = (tonumber(os.getenv("BENCH_ENTITY_START")) or 0) % count
local headers = {["Content-Type"] = "application/json"}

function request()
  local body = '{"entity_id":"' .. next_id .. '","features":' .. features .. '}'
  next_id = (next_id + 1) % count
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
