//! The macros that declare Ekko's options (`options.rs`): one INI section
//! each, with its struct, defaults, help and checks in one place.

/// Declare one INI section: the struct, its defaults and its descriptions.
macro_rules! option_group {
    (
        $(#[doc = $gdoc:literal])*
        pub struct $name:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident: $ty:ty = $default:expr;
            )*
        }
    ) => {
        $(#[doc = $gdoc])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])+
                #[serde(deserialize_with = "super::types::deserialize_option")]
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $name {
            pub const SECTION: &'static str = $section;

            pub fn describe() -> Vec<OptionInfo> {
                let defaults = Self::default();
                vec![$(
                    OptionInfo {
                        section: $section,
                        name: stringify!($field),
                        help: concat!($($doc, "\n"),+),
                        kind: <$ty as OptionType>::KIND,
                        default: OptionType::render(&defaults.$field),
                        choices: <$ty as OptionType>::choices(),
                        check: |raw| <$ty as OptionType>::parse_value(raw).map(|_| ()),
                    },
                )*]
            }
        }
    };
}

/// Declare a second section of an existing group's options (a second
/// store of the same kind): same options, defaults and checks.
macro_rules! option_group_alias {
    (
        $(#[doc = $gdoc:literal])*
        pub struct $name:ident in $section:literal as $of:ident;
    ) => {
        $(#[doc = $gdoc])*
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $of);

        impl $name {
            pub const SECTION: &'static str = $section;

            pub fn describe() -> Vec<OptionInfo> {
                $of::describe()
                    .into_iter()
                    .map(|o| OptionInfo { section: $section, ..o })
                    .collect()
            }
        }
    };
}
