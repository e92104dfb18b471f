"""Postpaid billing: usage accumulation, bill runs, invoices, payments and dunning.

Pure rules (``periods``, ``rentals``, ``usage``, ``compose``, ``invoices``, ``dunning``)
in the middle; Redis scripts (``*.lua``) and the services that run them (``accounts``,
``bill_run``, ``payments``, ``collection``), rendering and delivery at the edges;
``billing.py`` wires them, ``billing_api.py`` is the gRPC service.
"""
