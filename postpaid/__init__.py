"""Postpaid billing: usage accumulation, bill runs, invoices, payments and dunning.

Arrives with the postpaid work; the package exists so the layout is stable.
"""
