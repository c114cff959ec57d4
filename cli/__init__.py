"""The command-line tools, on top of everything else: `export-attn` (export_attn.py) and `check-attn`
(check_attn.py). This is the only place where exceptions become `Error: ...` lines and exit codes."""
