"""The front ends: what a person or a service manager talks to, above the node.

  cli.py        the `p2pfast` command line's handlers and main(); heavy modules only inside the commands
  parser.py     the command line's definition (argparse), built for the one command a call names
  render.py     output for people and scripts: bars, tables, JSON, the error line, times and sizes
  commands.py   what a command asks a node to do, shared by the daemon and a CLI run with no daemon
  daemon.py     `p2pfast serve`: the node with its control socket, sdnotify.py and metrics.py
  ctl/          the control socket: codec (sans-IO), the blocking client, the daemon's asyncio server
  clientio.py   a client's pipe, terminal or socket, read and written from the event loop
  listings.py, status.py   what `files`/`shares`/`peers` and `status` report from the repo
  cligen.py, demo.py       `completion`/`man`, and `demo`

Nothing below this package imports it. This file imports nothing: a CLI command that asks a running
daemon imports neither asyncio nor apsw (tests/test_layers.py checks the closure of p2pfast.front.cli).
"""
