-- wrk: POST /api/v1/orders/ with 3 seeded products, a seeded user, a fresh orderID.
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)

local function hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end

local function seeded(prefix, i)
  return string.format("%s-0000-4000-8000-%012d", prefix, i)
end

request = function()
  local p = math.random(1, 998)
  local u = math.random(6, 10000)
  local order = hex(8) .. "-" .. hex(4) .. "-4" .. hex(3) .. "-8" .. hex(3) .. "-" .. hex(12)
  local body = string.format(
    '{"orderID":"%s","paymentMethod":"Card","productsIds":["%s","%s","%s"],"userID":"%s","deliveryAddress":"%s"}',
    order, seeded("00000000", p), seeded("00000000", p + 1), seeded("00000000", p + 2),
    seeded("10000000", u), seeded("20000000", u))
  return wrk.format("POST", "/api/v1/orders/", { ["Content-Type"] = "application/json" }, body)
end
