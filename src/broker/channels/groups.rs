//! Groups: sets of channels, each member with its own expiry and the capacity its
//! channel was added with; a message sent to a group goes to every member with room.

use super::*;

impl Channels {
    /// Makes `channel` a member of `group` until `ttl` seconds from now; returns how
    /// many members the group has.
    pub fn group_add(
        &mut self,
        prefix: &str,
        group: &str,
        channel: &str,
        ttl: f64,
        capacity: usize,
        now: f64,
    ) -> Result<usize, RpcError> {
        let full = |what: String| RpcError::new(ErrorCode::ChannelFull, what);
        let space = match self.spaces.get_mut(prefix) {
            Some(space) => space,
            None => self.spaces.entry(prefix.into()).or_default(),
        };
        let members = match space.groups.get_mut(group) {
            Some(members) => members,
            None if self.group_count >= MAX_GROUPS => {
                self.drop_space_if_empty(prefix);
                return Err(full(format!("the broker holds its most groups ({MAX_GROUPS})")));
            }
            None => {
                self.group_count += 1;
                space.groups.entry(group.into()).or_default()
            }
        };
        let before = members.len();
        members.retain(|_, member| member.expires > now);
        self.membership_count -= before - members.len();
        let member = Member { expires: now + ttl, capacity };
        if let Some(existing) = members.get_mut(channel) {
            *existing = member;
            return Ok(members.len());
        }
        if members.len() >= MAX_GROUP_MEMBERS || self.membership_count >= MAX_MEMBERSHIPS {
            let count = members.len();
            if count == 0 {
                self.remove_group(prefix, group);
            }
            return Err(full(format!(
                "group {group:?} has {count} members and the broker {} memberships; at most {MAX_GROUP_MEMBERS} \
                 and {MAX_MEMBERSHIPS}",
                self.membership_count
            )));
        }
        members.insert(channel.into(), member);
        self.membership_count += 1;
        Ok(members.len())
    }

    /// `channel` leaves `group`; true when it was a member.
    pub fn group_discard(&mut self, prefix: &str, group: &str, channel: &str) -> bool {
        let Some(members) = self.spaces.get_mut(prefix).and_then(|space| space.groups.get_mut(group)) else {
            return false;
        };
        let removed = members.remove(channel).is_some();
        self.membership_count -= usize::from(removed);
        if members.is_empty() {
            self.remove_group(prefix, group);
        }
        removed
    }

    /// Sends `message` to every live member of `group` with room.
    pub fn group_send(
        &mut self,
        prefix: &str,
        group: &str,
        message: Arc<RawValue>,
        ttl: f64,
        now: f64,
    ) -> GroupSent {
        self.stats.group_sends += 1;
        let Some(members) = self.spaces.get_mut(prefix).and_then(|space| space.groups.get_mut(group)) else {
            return GroupSent::default();
        };
        let before = members.len();
        members.retain(|_, member| member.expires > now);
        self.membership_count -= before - members.len();
        let targets: Vec<(Arc<str>, usize)> =
            members.iter().map(|(channel, member)| (channel.clone(), member.capacity)).collect();
        if targets.is_empty() {
            self.remove_group(prefix, group);
        }
        let mut sent = GroupSent { members: targets.len(), ..GroupSent::default() };
        for (channel, capacity) in targets {
            let taken = self.new_taken(channel, message.clone(), now + ttl);
            match self.offer(prefix, taken, capacity, now) {
                Ok(()) => sent.sent += 1,
                Err(_) => sent.full += 1,
            }
        }
        self.stats.group_dropped += sent.full as u64;
        sent
    }

    fn remove_group(&mut self, prefix: &str, group: &str) {
        let Some(space) = self.spaces.get_mut(prefix) else { return };
        if let Some(members) = space.groups.remove(group) {
            self.group_count -= 1;
            self.membership_count -= members.len();
        }
        self.drop_space_if_empty(prefix);
    }
}
