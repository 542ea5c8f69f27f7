//! `#[flint::main]`: turns `fn main(ctx: &mut flint::Context) -> flint::Result<()>` into a
//! Flint job component (exports the `flint:job` world's `job` and `task` interfaces).

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, parse_macro_input};

#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[flint::main] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let mut f = parse_macro_input!(item as ItemFn);
    if f.sig.inputs.len() != 1 {
        return syn::Error::new_spanned(
            &f.sig,
            "a Flint main takes one argument: `ctx: &mut flint::Context`",
        )
        .to_compile_error()
        .into();
    }
    f.sig.ident = syn::Ident::new("__flint_user_main", f.sig.ident.span());
    quote! {
        #f

        #[doc(hidden)]
        struct __FlintJob;

        impl ::flint::__private::JobGuest for __FlintJob {
            fn interface_version() -> u32 {
                ::flint::__private::INTERFACE_VERSION
            }
            fn main(args: ::std::vec::Vec<::std::string::String>) -> ::std::result::Result<(), ::flint::__private::ErrorChain> {
                ::flint::__private::run_main(args, __flint_user_main)
            }
        }

        impl ::flint::__private::TaskGuest for __FlintJob {
            fn start(spec: ::flint::__private::TaskSpec) -> ::std::result::Result<(), ::flint::__private::ErrorChain> {
                ::flint::__private::task_start(spec)
            }
            fn push(piece: u32, side: u32, batch: ::std::vec::Vec<u8>) -> ::std::result::Result<(), ::flint::__private::ErrorChain> {
                ::flint::__private::task_push(piece, side, batch)
            }
            fn take_accumulators() -> ::std::vec::Vec<::flint::__private::AccumulatorUpdate> {
                ::flint::__private::task_take_accumulators()
            }
            fn end_piece(piece: u32) -> ::std::result::Result<(), ::flint::__private::ErrorChain> {
                ::flint::__private::task_end_piece(piece)
            }
            fn finish() -> ::std::result::Result<(), ::flint::__private::ErrorChain> {
                ::flint::__private::task_finish()
            }
        }

        ::flint::__private::export!(__FlintJob with_types_in ::flint::__private::bindings);
    }
    .into()
}
