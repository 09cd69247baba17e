-- wrk script: rotates over the paths given after `--` (one or more), and prints one JSON line with the
-- figures the benchmark needs (requests/s, bytes/s, latency percentiles in microseconds, errors).
local paths = {}
local next_path = 1

function init(args)
  for i = 1, #args do
    paths[#paths + 1] = args[i]
  end
  if #paths == 0 then
    paths[1] = "/"
  end
end

function request()
  local path = paths[next_path]
  next_path = next_path % #paths + 1
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %d, "bytes": %d, "seconds": %.3f, "rps": %.1f, "bytes_per_s": %.1f, '
      .. '"p50_us": %d, "p99_us": %d, "max_us": %d, "errors": %d}\n',
    summary.requests, summary.bytes, seconds, summary.requests / seconds, summary.bytes / seconds,
    latency:percentile(50), latency:percentile(99), latency.max, errors))
end
