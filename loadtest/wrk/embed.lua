-- POST /embed with TEXTS sentences (environment variable, default 1), as the SwiftEmbed paper's wrk runs do.
local n = tonumber(os.getenv("TEXTS") or "1")
local texts = {}
for i = 1, n do
  texts[i] = string.format('"A man with a hard hat is dancing number %d."', i)
end
wrk.method = "POST"
wrk.path = "/embed"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"texts": [' .. table.concat(texts, ",") .. ']}'

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\n")
  end
end
