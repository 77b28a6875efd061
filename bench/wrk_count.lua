-- wrk script: harness/wrk_post.lua (loaded relative to this file), but each thread stops after MAX_REQUESTS
-- responses (bench/serve_bench.py's memory check runs it with -t1, so that is the total).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../harness/wrk_post.lua")

local limit = tonumber(os.getenv("MAX_REQUESTS") or "0")
local count = 0

response = function(status, headers, body)
  count = count + 1
  if limit > 0 and count >= limit then
    wrk.thread:stop()
  end
end
