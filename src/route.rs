//! Routing: (client user, database) → upstream server and credential source.
//!
//! Routes are fixed at start-up from the configuration. A database nobody
//! routes is "unknown" (3D000); a known database the user is not listed on is
//! refused (28000). Lookup happens only after the client has authenticated, so
//! an unauthenticated client learns nothing about which databases exist.

use std::collections::HashMap;
use std::sync::Arc;

use crate::credentials::CredentialSource;
use crate::upstream::UpstreamTarget;

/// One route: where a (user, database) pair goes.
pub struct Route {
    /// The database name clients ask for (also the route's name in logs).
    pub database: String,
    users: Vec<String>,
    pub upstream: Arc<UpstreamTarget>,
    pub source: Arc<CredentialSource>,
    pub session_role: Option<String>,
    /// Settings clients may give, lowercase (`[[routes]] allowed_parameters`).
    pub allowed_parameters: Vec<String>,
}

impl Route {
    pub fn new(
        database: String,
        users: Vec<String>,
        upstream: Arc<UpstreamTarget>,
        source: Arc<CredentialSource>,
        session_role: Option<String>,
        allowed_parameters: Vec<String>,
    ) -> Self {
        Route {
            database,
            users,
            upstream,
            source,
            session_role,
            allowed_parameters,
        }
    }

    fn admits(&self, user: &str) -> bool {
        self.users.iter().any(|u| u == "*" || u == user)
    }
}

/// Why a client may not use the database it asked for (the text is for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no route for this database")]
    UnknownDatabase,
    #[error("user not listed on the route")]
    NotPermitted,
}

/// All routes, by client-facing database name.
#[derive(Default)]
pub struct Routes {
    by_database: HashMap<String, Vec<Arc<Route>>>,
}

impl Routes {
    pub fn add(&mut self, route: Route) {
        self.by_database
            .entry(route.database.clone())
            .or_default()
            .push(Arc::new(route));
    }

    pub fn lookup(&self, database: &str, user: &str) -> Result<Arc<Route>, RouteError> {
        let routes = self
            .by_database
            .get(database)
            .ok_or(RouteError::UnknownDatabase)?;
        // A user named explicitly wins over a wildcard route.
        routes
            .iter()
            .find(|r| r.users.iter().any(|u| u == user))
            .or_else(|| routes.iter().find(|r| r.admits(user)))
            .cloned()
            .ok_or(RouteError::NotPermitted)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_database.values().flatten()
    }
}
