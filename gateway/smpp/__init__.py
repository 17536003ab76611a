"""SMPP 3.4 client side: outbound binds to carriers' SMSCs.

- :mod:`gateway.smpp.codec`: sans-IO PDU encoding/decoding (smpplib as the codec only);
- :mod:`gateway.smpp.session`: one connector (one bind, or a transmitter + receiver pair) with framing,
  window, enquire_link, token bucket, throttling backoff and the reconnect loop (the module docstring
  states the policies: duplicate risk, throttling, outcomes);
- :mod:`gateway.smpp.link`: one connection of a session (framing, writer, enquire_link, in-flight parts);
- :mod:`gateway.smpp.pool`: :class:`~gateway.smpp.pool.ConnectorPool`, weighted routing over sessions;
- :mod:`gateway.smpp.types`: the public value types (``SubmitPart``, ``SubmitResult``, ``DeliverSm``);
- :mod:`gateway.smpp.errors`: the errors this layer raises.
"""
