//! whale-tensor
