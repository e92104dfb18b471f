"""The Diameter Gy/Ro front door (RFC 6733, RFC 8506, 3GPP TS 32.299) of the charging core.

    config.py          settings of the door: address, identity, allowed peers, default rating groups
    dictionary.py      the AVP codes we read and write (python-diameter's dictionary), the M-bit check
    codec.py           framing on a TCP stream, decoding with python-diameter, building answers
    peers.py           the allow-list and the table of open peer connections (pure)
    base.py            CER/CEA, DWR/DWA, DPR/DPA (pure: a request in, an answer out)
    credit_control.py  CCR -> the core's SessionRequest / EventRequest (pure)
    service_units.py   *-Service-Unit and CC-Money -> the core's Units (pure)
    service_information.py  called party, direction, visited network (pure)
    answers.py         the core's answers -> CCA (pure)
    connection.py      one peer connection: the asyncio state machine
    listener.py        the listening socket, the charging calls, start and stop
    (charging/held.py, charging/signals.py: sessions held for RAR/ASR, the signals that trigger them)
    metrics.py         Prometheus metrics of the door (labels: command, result code)

The charging core is called in process (``SessionCharging.charge``, ``EventCharging.charge``),
as the gRPC servicer calls it: one Redis round trip per request, the stored answer of a
request number replayed for a retransmission.
"""
