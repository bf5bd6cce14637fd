//! whale-model
