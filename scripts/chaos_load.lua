-- wrk: mixed traffic for scripts/chaos.py — new orders, the SQL list, users' cached lists,
-- the product list — counting answers by status (printed as "status <code> <count>").
local users = tonumber(os.getenv("CHAOS_USERS"))
local products = tonumber(os.getenv("CHAOS_PRODUCTS"))
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  math.randomseed(os.time() + id * 7919)
end

local function seeded(prefix, i)
  return string.format("%s-0000-4000-8000-%012d", prefix, i)
end

local function hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end

request = function()
  local r = math.random(1, 10)
  local u = math.random(1, users)
  if r <= 4 then
    local p = math.random(1, products - 2)
    local body = string.format(
      '{"orderID":"%s-%s-4%s-8%s-%s","paymentMethod":"Cash","productsIds":["%s","%s","%s"],"userID":"%s","deliveryAddress":"%s"}',
      hex(8), hex(4), hex(3), hex(3), hex(12), seeded("00000000", p), seeded("00000000", p + 1),
      seeded("00000000", p + 2), seeded("10000000", u), seeded("20000000", u))
    return wrk.format("POST", "/api/v1/orders/", { ["Content-Type"] = "application/json" }, body)
  elseif r <= 6 then
    return wrk.format("GET", "/api/v1/orders/?limit=20&order=desc")
  elseif r <= 9 then
    return wrk.format("GET", "/api/v1/orders/user/" .. seeded("10000000", u) .. "?limit=50")
  else
    return wrk.format("GET", "/api/v1/products/?limit=10")
  end
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("status %d %d\n", status, n))
  end
end
