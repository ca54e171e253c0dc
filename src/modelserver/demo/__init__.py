"""`modelserver demo`: the whole job on one machine, in about a minute, no GPU, no network.

Modules: `fleet` (the fleet file it writes, `up`/`down` through the launcher), `workload`
(traffic through the gateway with the openai SDK), `live` (the live view or plain lines),
`summary` (numbers and the verdict), `run` (start to end), `command` (the CLI).
"""
