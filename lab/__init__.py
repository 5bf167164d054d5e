"""tokentrust lab: stand-ins for the CA, the USB key and the CA's test page."""
