-- wrk script: GET /verify with a different bearer token per request.
--
--   wrk -t1 -c64 -d5s -s tokens.lua http://127.0.0.1:3000/verify -- FILE ORDER THREADS
--
-- FILE has one token per line. ORDER is "sequential" (each token once, in
-- turn; the THREADS threads take interleaved slices) or "random" (uniform
-- from the pool).
-- Prints one JSON line of results at the end.

local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  for line in io.lines(args[1]) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
  random_order = args[2] == "random"
  step = tonumber(args[3]) or 1
  position = index or 0
  wrapped = 0
  math.randomseed(os.time() + (index or 0))
end

function request()
  local token
  if random_order then
    token = tokens[math.random(#tokens)]
  else
    if position >= #tokens then
      wrapped = wrapped + 1
    end
    token = tokens[(position % #tokens) + 1]
    position = position + step
  end
  return wrk.format("GET", nil, { ["Authorization"] = token }, nil)
end

function done(summary, latency, requests)
  local total_wrapped = 0
  for _, thread in ipairs(threads) do
    total_wrapped = total_wrapped + (thread:get("wrapped") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"status_errors": %d, "socket_errors": %d, "wrapped": %d}\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout, total_wrapped
  ))
end
