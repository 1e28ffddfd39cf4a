"""Everything that is in Redis: key names, payload codec, Lua scripts,
connections and the embedded server."""
