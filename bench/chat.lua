-- wrk script: POST one chat request over and over, then print a JSON summary.
-- The body comes from the file named by BENCH_BODY_FILE; extra headers from
-- BENCH_HEADERS ("Name: value" lines). run.py sets both. With BENCH_ROTATE_FILE, each
-- request adds the next of that file's header lines in turn (a key per tenant, say).

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then
    wrk.headers[name] = value
  end
end

local rotate = os.getenv("BENCH_ROTATE_FILE")
if rotate and rotate ~= "" then
  local prepared, i = {}, 0
  for line in io.lines(rotate) do
    local name, value = string.match(line, "^([^:]+):%s*(.*)$")
    if name then
      local headers = {}
      for k, v in pairs(wrk.headers) do headers[k] = v end
      headers[name] = value
      table.insert(prepared, wrk.format(nil, nil, headers, nil))
    end
  end
  -- Written out once: request() only picks the next one.
  function request()
    i = i % #prepared + 1
    return prepared[i]
  end
end

-- No response() hook: defining one makes wrk hand every body to Lua and slows it down.
-- summary.errors.status counts answers that were not 2xx or 3xx.

function done(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 90, 99, 99.9}) do
    table.insert(p, string.format('"%s": %d', tostring(q), latency:percentile(q)))
  end
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "max": %d, %s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, table.concat(p, ", ")))
end
