"""HTTP layer: one blueprint per concern; views parse the request, call one service, return a dict."""
