"""The VNF library, built on nfaas.nf: firewall, load balancer, NAT, TOF, rate limiter."""
