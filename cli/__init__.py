"""The command-line tools, on top of everything else: `export-attn` (export_attn.py, with the output forms'
options and printed lines in forms.py), `check-attn` (check_attn.py) and `bench-attn` (bench_attn.py, a group
of subcommands; its tables in bench_tables.py). Their options and what they print live here, not in the
packages beneath; this is the only place where exceptions become `Error: ...` lines and exit codes
(common.py)."""
