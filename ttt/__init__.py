"""ttt: test-time training for ARC, vmapped over tasks.

Modules: `arc` (tasks), `tokens` (grid <-> sequence), `augment` (the group),
`data` (leave-one-out TTT datasets), `vote` (voting reducers).
"""
