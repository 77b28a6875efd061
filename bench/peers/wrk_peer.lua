-- wrk script: harness/wrk_post.lua (POST the file BODY_FILE, print percentiles as JSON) plus the headers in
-- EXTRA_HEADERS ("Name: value|Name: value"), which some peers' framings need (bench/peers/framing.py).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../../harness/wrk_post.lua")

for name, value in string.gmatch(os.getenv("EXTRA_HEADERS") or "", "([^:|]+):%s*([^|]*)") do
  wrk.headers[name] = value
end
