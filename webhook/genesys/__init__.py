"""The Genesys Cloud client, one module a job; import from the module, not from the package.

- `model`: the values shared with the store (Attempt, Connection, Identity); no third-party imports.
- `retry`: pure retry decisions.  `ratelimit`: request spacing per token.
- `transport`: one HTTP exchange, recorded as an Attempt; Genesys error answers turned into GenesysError.
- `auth`: token sources: client credentials, and user connections (authorization-code grant, refresh).
- `client`: the API calls of this service: users, calls, mute, and acting as the configured identities.
- `explain`: one line a person can act on, for every Genesys error.
"""
