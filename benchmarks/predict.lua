-- wrk script: POST /predict with bodies rotated from the file in $TAGIFAI_BENCH_BODIES (one JSON per line).
local bodies = {}
local path = os.getenv("TAGIFAI_BENCH_BODIES")
for line in io.lines(path) do
  bodies[#bodies + 1] = line
end
local counter = 0
local threads = {}

function setup(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  i = offset or 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  i = i + 1
  return wrk.format(nil, "/predict", nil, bodies[(i % #bodies) + 1])
end

non200 = 0  -- global: done() reads it from each thread
function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  -- wrk's own status count only sees 4xx/5xx; every answer but 200 is an error here
  local not_ok = 0
  for _, thread in ipairs(threads) do
    not_ok = not_ok + (thread:get("non200") or 0)
  end
  io.write(string.format("JSON{\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"requests\":%d,\"seconds\":%.3f,\"errors_connect\":%d,\"errors_read\":%d,\"errors_write\":%d,\"errors_timeout\":%d,\"errors_not_200\":%d}\n",
    latency:percentile(50) / 1000.0, latency:percentile(90) / 1000.0, latency:percentile(99) / 1000.0,
    summary.requests, summary.duration / 1e6, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, not_ok))
end
