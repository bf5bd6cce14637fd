//! whale-tokenizer
