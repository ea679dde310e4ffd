-- wrk script: single-text POST /predict, counting every answer by its status and by the version
-- that produced it (VERSION_A, VERSION_B from the environment; anything else is "unlabelled").
local a, b = os.getenv("VERSION_A"), os.getenv("VERSION_B")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.path = "/predict"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"texts": [{"text": "Transfer learning with transformers for text classification."}]}'
end

ok, not_ok, from_a, from_b, unlabelled = 0, 0, 0, 0, 0  -- globals: done() reads them from each thread
function response(status, headers, body)
  if status ~= 200 then
    not_ok = not_ok + 1
    return
  end
  ok = ok + 1
  local version = string.match(body, '"model_version":"([^"]+)"')
  if version == a then
    from_a = from_a + 1
  elseif version == b then
    from_b = from_b + 1
  else
    unlabelled = unlabelled + 1
  end
end

function done(summary, latency, requests)
  local totals = {ok = 0, not_ok = 0, from_a = 0, from_b = 0, unlabelled = 0}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format('JSON{"requests":%d,"ok":%d,"not_200":%d,"from_a":%d,"from_b":%d,"unlabelled":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, totals.ok, totals.not_ok, totals.from_a, totals.from_b, totals.unlabelled,
    e.connect, e.read, e.write, e.timeout, latency:percentile(50) / 1000.0, latency:percentile(99) / 1000.0))
end
