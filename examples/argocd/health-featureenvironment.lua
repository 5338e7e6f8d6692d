-- Argo CD health check for featureenv.io/FeatureEnvironment.
--   Ready                 -> Healthy      (message: the API endpoint, or the Ready message)
--   Failed                -> Degraded     (message: the Ready condition's reason and message)
--   Ready=False with a reason the spec cannot get past by waiting (a missing class,
--   a TTL over the class maximum, an image not in its registry, the namespace's cap,
--   a Secret in the way, ...) -> Degraded, whatever the phase
--   Pending, Provisioning -> Progressing  (message: the Ready condition's reason and message)
--   Updating              -> Progressing  (an edit of spec.services rolling out; message: what)
--   Waking                -> Progressing  (spec.sleeping set back to false: the instance and
--                                          the database starting, the services coming back)
--   Sleeping              -> Suspended    (spec.sleeping: true, instance and database stopped;
--                                          message: the Ready condition's reason and message)
--   Terminating           -> Progressing
--   no status yet, or status older than the spec -> Progressing
--   any other phase       -> Unknown
-- Argo CD sets the global `obj` to the live object and uses the table this returns.
local hs = {}

-- The reasons the operator writes when an environment cannot be provisioned as it
-- stands (tests/argocd checks this list against the operator's source).
local unsatisfiable = {
  ClassNotFound = true,
  InvalidClass = true,
  InvalidTTL = true,
  TTLExceedsMaximum = true,
  InstanceTypeNotAllowed = true,
  InvalidImage = true,
  DuplicateService = true,
  ImageNotFound = true,
  NoMatchingImage = true,
  NamespaceLimitReached = true,
  NamespaceNotAllowed = true,
  UserDataTooLarge = true,
  SecretConflict = true,
}

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.message
  if text == nil or text == "" then
    text = fallback
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. text
  end
  return text
end

if obj.status == nil or obj.status.phase == nil or obj.status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the environment"
  return hs
end

local phase = obj.status.phase
local ready = condition("Ready")

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Failed")
  return hs
end

if phase == "Terminating" then
  hs.status = "Progressing"
  hs.message = describe(ready, "Terminating: removing the instance and database")
  return hs
end

if phase == "Updating" then
  -- observedGeneration stays behind until the instance runs the edited services.
  hs.status = "Progressing"
  hs.message = describe(ready, "Updating: rolling out the edited services")
  return hs
end

if phase == "Waking" then
  -- Like an update: the edit (sleeping: false) is done once the instance reports healthy.
  hs.status = "Progressing"
  hs.message = describe(ready, "Waking: starting the instance and the database")
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if ready ~= nil and ready.status == "False" and unsatisfiable[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready, phase)
  return hs
end

-- After the stale-status check: a sleeping environment just told to wake is not
-- suspended any more, it waits for the operator.
if phase == "Sleeping" then
  hs.status = "Suspended"
  hs.message = describe(ready, "Sleeping: instance and database stopped")
  return hs
end

if phase == "Ready" then
  hs.status = "Healthy"
  if obj.status.endpoints ~= nil and obj.status.endpoints.api ~= nil then
    hs.message = "Ready at " .. obj.status.endpoints.api
  else
    hs.message = describe(ready, "Ready")
  end
  return hs
end

if phase == "Pending" or phase == "Provisioning" then
  hs.status = "Progressing"
  hs.message = describe(ready, phase)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
