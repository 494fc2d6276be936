"""The three thin command-line front ends: recmg, recmgd, recmgctl."""
