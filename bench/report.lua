-- Loaded by every wrk run: prints one JSON line with exact counts, so the driver does not
-- have to parse wrk's rounded human summary.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeout_errors": %d, "status_errors": %d, '
      .. '"latency_p50_us": %d, "latency_p99_us": %d, "latency_max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.timeout, errors.status, latency:percentile(50),
    latency:percentile(99), latency.max))
end
