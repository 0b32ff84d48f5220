"""`labcheck watch`: continuous triage in rounds, with confirmation, one incident state and its messages.

``confirm`` (when a failure counts, recovers, flaps) <- ``state`` (incident-state.json, each round
applied) <- ``messages`` (declaration, updates, resolution, review) and ``screen`` <- ``rounds``
(one bounded pytest process) and ``outbox`` (notifications in the background) <- ``loop`` (one
environment's watcher) <- ``command`` (the CLI).
"""
