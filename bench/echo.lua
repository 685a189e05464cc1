-- The echo case: every request is a POST with a 4 KiB body (wrk adds its Content-Length).
wrk.method = "POST"
wrk.body = string.rep("e", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"

-- wrk takes one script: reuse the JSON summary from the file beside this one.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
