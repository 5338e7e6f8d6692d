-- Argo CD health check for featureenv.io/RdsPool.
--   a condition `Degraded=True`, or a condition with status False whose reason names a
--   failure (contains Failed, Error, NotFound, Invalid or TooOld: restoring spares from
--   a stale snapshot, SnapshotTooOld, needs someone to act) -> Degraded (its message)
--   status older than the spec, or no status yet           -> Progressing
--   status.warm >= spec.warm (default 1)                    -> Healthy
--   otherwise                                               -> Progressing ("w/n warm spares ...")
-- Argo CD sets the global `obj` to the live object and uses the table this returns.
local hs = {}

local function failureReason(reason)
  if reason == nil then
    return false
  end
  return string.find(reason, "Fail", 1, true) ~= nil
    or string.find(reason, "Error", 1, true) ~= nil
    or string.find(reason, "NotFound", 1, true) ~= nil
    or string.find(reason, "Invalid", 1, true) ~= nil
    or string.find(reason, "TooOld", 1, true) ~= nil
end

local function describe(c)
  local text = c.message
  if text == nil or text == "" then
    text = c.type
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. text
  end
  return text
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the pool"
  return hs
end

if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if (c.type == "Degraded" and c.status == "True") or (c.status == "False" and failureReason(c.reason)) then
      hs.status = "Degraded"
      hs.message = describe(c)
      return hs
    end
  end
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local want = 1
if obj.spec ~= nil and obj.spec.warm ~= nil then
  want = obj.spec.warm
end
local warm = obj.status.warm or 0
local claimed = obj.status.claimed or 0
local creating = obj.status.creating or 0
local summary = tostring(warm) .. "/" .. tostring(want) .. " warm spares, " .. tostring(claimed)
  .. " claimed, " .. tostring(creating) .. " creating"

if warm >= want then
  hs.status = "Healthy"
else
  hs.status = "Progressing"
end
hs.message = summary
return hs
