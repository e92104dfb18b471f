"""The 5G CHF door: Nchf_ConvergedCharging (3GPP TS 32.291, API v3) over HTTP/2, in the
server process, calling the charging core in process.

- ``chargingdata.schema.json``: the ChargingDataRequest fields read, from the specification.
- ``requests.py``: a body checked against it and read into typed records.
- ``mapping.py``: those records to the core's session requests and its answers back to
  ChargingDataResponse / ProblemDetails (pure), with free5GC's quirks.
- ``app.py``: the ASGI application (routes, callers' role, metrics).
- ``listener.py``: hypercorn on ``CHARGING_NCHF_ADDRESS``, TLS and client identities, start and stop.
- ``metrics.py``: the door's metrics.
"""
