"""The review page: everything the daemon holds about its user, in their browser, with the
controls to pause, opt out and forget.

- `server`: run by the daemon (a Uvicorn thread, 127.0.0.1, an ephemeral port, only while used);
  the address with its token is given only over the control socket (`review` request).
- `app`: the Starlette app and its guard (token then cookie, Host, Origin, CSRF, CSP).
- `index`: what the page reads: a compact index of the journal that the daemon builds at start
  and extends by the new records only, fast with 100,000 events held.
- `view`: pure functions that make events readable (diffs, redaction markers, the SVG chart).
- `tasks`: the Tasks tab: the coding tasks the episodes package mines from the held events,
  mined on request, bounded, and kept until the journal changes.
- `templates/`, `static/`: the page, its stylesheet and its one small script; nothing else is
  loaded, and nothing from the network.
"""
