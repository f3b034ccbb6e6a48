pub mod vault_double;
