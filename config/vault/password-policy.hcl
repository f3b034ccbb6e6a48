# Vault password policy for the dynamic PostgreSQL roles: 48 characters from
# letters, digits and "-_.~" (no quote, backslash, space or URL delimiter, so a
# password survives SQL literals, connection strings and SASLprep untouched),
# at least a few of each class. About 290 bits of entropy.
#
#   vault write sys/policies/password/pgwarden-postgres policy=@password-policy.hcl
length = 48

rule "charset" {
  charset   = "abcdefghijklmnopqrstuvwxyz"
  min-chars = 4
}

rule "charset" {
  charset   = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  min-chars = 4
}

rule "charset" {
  charset   = "0123456789"
  min-chars = 4
}

rule "charset" {
  charset   = "-_.~"
  min-chars = 2
}
