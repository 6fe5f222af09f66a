"""Episodes: verified coding tasks with trajectories, mined from captured work.

Reads exported events (never the daemon's internals) and, for `validate`, a clone of the
repository. `events` reads them, `segment` finds the spans where failing tests come to pass,
`patches` rebuilds the working tree from `repo.state` and `file.save` diffs, `trajectory` writes
the steps as chat messages, `mine` puts an instance together; all of these are pure. Only
`validate` runs git and tests. Fields: CONTRACT.md (Episodes) and `schemas/episode.schema.json`.
"""
