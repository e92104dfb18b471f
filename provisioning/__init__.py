"""Customer acquisition and provisioning: the CRM's customers, lines, orders and
customer care, the order flows (``acquisition.py`` draws them), and the worker that
brings each line's state on the network in line with what was ordered (``worker.py``).
Every Redis key of the package is named in ``keys.py``.
"""
