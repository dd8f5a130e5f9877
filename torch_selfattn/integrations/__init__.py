"""Integrations with other libraries; each is imported only when asked for,
so torch_selfattn itself needs none of them."""
