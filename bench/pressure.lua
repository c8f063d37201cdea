-- wrk script for bench/pressure.sh (issue 22): POST /orders with the spec's three orders in turn,
-- counting every answer by status; done() prints one JSON line (prefixed "PRESSURE ") with the
-- totals, wrk's socket errors and its latency percentiles.
local bodies = {
  '{"customer_name":"John Doe","order_type":"takeout","items":[{"name":"Margherita Pizza","quantity":2,"price":15.99},{"name":"Caesar Salad","quantity":1,"price":8.99}]}',
  '{"customer_name":"Jane Smith","order_type":"dine_in","table_number":12,"items":[{"name":"Steak","quantity":1,"price":29.99}]}',
  '{"customer_name":"Bob Johnson","order_type":"delivery","delivery_address":"123 Main Street, Apt 4B","items":[{"name":"Burger Combo","quantity":2,"price":18.99}]}',
}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  n = 0
end

function request()
  n = n + 1
  return wrk.format("POST", "/orders", { ["Content-Type"] = "application/json" }, bodies[(n % #bodies) + 1])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      all[status] = (all[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(all) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'PRESSURE {"requests":%d,"duration_s":%.3f,"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"max":%.3f}}\n',
    summary.requests, summary.duration / 1e6, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
