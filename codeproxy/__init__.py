"""The `codeproxy` command and the ASGI pieces both services share (importing neither)."""
