"""Provisioning adapter: activates, bars, suspends and terminates lines on the network.

Arrives with the customer-acquisition work; the package exists so the layout is stable.
"""
