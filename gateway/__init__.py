"""Messaging gateway: SMS over SMPP and email over SMTP for business applications.

Importing this package never opens a socket or a database.
"""

__version__ = "0.1.0"
